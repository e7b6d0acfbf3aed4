"""nn_adapters: torch layers mapped onto kronalg primitives (Fisher blocks, preconditioners).

The adapters arrive with their own issue; this package marker keeps the layout fixed.
"""
