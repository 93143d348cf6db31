"""Pure functions: values in, values out.

Nothing in this package may import :mod:`perpmargin.state`, :mod:`perpmargin.engine`,
:mod:`perpmargin.ledger` or any adapter; ``tests/test_layers.py`` enforces it. Every
function states its formula, units and rounding in its docstring.
"""
