"""Jobs: clients of the engine that change host state, each with its undo."""
