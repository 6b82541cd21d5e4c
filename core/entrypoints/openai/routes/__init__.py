"""The server's routes, one module per group; ``api_server.build_app`` includes each router."""
