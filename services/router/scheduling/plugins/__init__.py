"""Built-in scheduling plugins, one per module: filters/, scorers/, pickers/."""
