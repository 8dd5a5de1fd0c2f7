"""Where the night's data lives: the var/ layout and the warehouse tables."""
