"""Export of trained networks to other tools: NIR graphs (nir), and a small runner of NIR graphs (nir_runner)."""
