"""Documents: read, chunk, embed, store and retrieve an agent's documents."""
