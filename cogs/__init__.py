"""Discord front end: one module per feature, each with `setup(bot)`. Thin: a cog parses
options, defers, calls one service, and renders the result."""
