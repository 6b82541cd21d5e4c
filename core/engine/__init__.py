"""The engine: sequences, the block manager, the scheduler and the step loop."""
