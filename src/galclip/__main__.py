"""``python -m galclip`` (and ``torchrun -m galclip``) entry point."""

from galclip.cli import main

if __name__ == "__main__":
    main()
