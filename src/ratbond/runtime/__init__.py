"""The I/O shell: one asyncio loop per process wiring file descriptors to the sans-I/O core."""
