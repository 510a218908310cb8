"""The Discord front end: the client, reply helpers, the console and its stand-in."""
