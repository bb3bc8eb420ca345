"""Reading torch checkpoints and matching their keys to a model: the one code path for the Stein et al. image
checkpoint, the Spender spectrum checkpoint and galclip's heads files.

Only torch: the encoders (extract/) and the heads (heads/) both import it.
"""

from __future__ import annotations

from pathlib import Path

import torch


def read_checkpoint(path: Path, what: str, error: type[Exception], hint: str = "", weights_only: bool = True) -> object:
    """``torch.load`` on the CPU; any failure to unpickle is ``error`` naming the file, ``what`` it should be, and
    ``hint`` (the fix)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        raise error(f"{path}: cannot read the {what} ({err}){'; ' + hint if hint else ''}") from err


def with_prefix(state: dict, prefix: str) -> dict:
    """The entries of ``state`` whose key starts with ``prefix``, the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_exactly(
    model: torch.nn.Module, state: dict, path: Path, what: str, error: type[Exception], shown: int = 10
) -> None:
    """Load ``state`` into ``model`` strictly; keys that differ are ``error`` naming the file, ``what`` the keys
    should match, and up to ``shown`` missing and unexpected keys."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        more = lambda keys: " …" if len(keys) > shown else ""
        raise error(
            f"{path}: keys do not match {what}: missing {missing[:shown]}{more(missing)}, "
            f"unexpected {unexpected[:shown]}{more(unexpected)}"
        )
    model.load_state_dict(state, strict=True)
