"""Running the stack: ``deploy.local`` (processes, ``make up/down/demo``) and the compose files."""
