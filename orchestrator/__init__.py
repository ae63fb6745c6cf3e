"""scissorhands-sweep: Scissorhands unlearning, sweeps, tracking."""

__version__ = "0.1.0"
