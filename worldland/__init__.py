"""WorldLand provider onboarding: the domain core shared by the listener, CLI, plugins and roles."""

__version__ = "0.1.0"
