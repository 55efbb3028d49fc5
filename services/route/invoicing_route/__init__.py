"""Route: decides where each valid invoice goes."""
