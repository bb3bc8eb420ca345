"""Mock survey grounded in real templates, filters and galaxies that PyPI packages ship."""
