"""The indicator t' (Algorithm 1) and the bound of Eq. 9 (``search``), and its stage (``stage``)."""
