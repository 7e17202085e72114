"""Errors that reach the user as one clear line."""


class ConfigError(ValueError):
  """A config value or input path is wrong; the message names the field and the fix."""
