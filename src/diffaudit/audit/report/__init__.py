"""What a reader sees: the HTML and Markdown report (``render``), its plots (``plots``), comparisons of runs (``compare``) and the privacy section (``privacy``)."""
