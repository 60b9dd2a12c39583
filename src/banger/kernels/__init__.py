"""Kernels: formats (bzImage/ELF), discovery in a directory, small initrds, the local store."""
