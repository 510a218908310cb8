"""Discord-free, HTTP-free, provider-free application services."""
