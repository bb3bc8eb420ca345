"""Quarantine codes: why a row of the store holds no features (``--bad-rows skip``). 0 is a good row."""

from __future__ import annotations

REASONS = {
    1: "image has NaN/inf pixels",
    2: "spectrum has NaN/inf values",
    3: "spectrum is constant (e.g. all zero): it cannot be z-scored",
    4: "image is all zero",
}
