"""One file per schema change, named NNNN_what.py; `graft db revision -m WHAT` writes the next one."""
