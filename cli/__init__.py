"""The `graft` command line: servers (api, worker), client commands, and the demo."""
