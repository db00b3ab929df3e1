"""GitLab external status check bot: evaluates YAML policies against merge requests."""

__version__ = "0.1.0"
