"""The command line, the settings loader and (later) the local cluster launcher."""
