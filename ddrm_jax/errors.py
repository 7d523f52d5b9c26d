"""Errors that users see, and how they are shown on one line.

A library error that concerns a setting of a run names the setting as it is spelled in
`pipeline.RestoreConfig` (`kernel_size`), never as a command-line flag (`--kernel_size`): in a
`SettingError` message a setting's name is marked `§name`. `str(e)` shows the plain name; the
command line shows `--name` (`e.with_flags()`), so one message serves the library and the CLI.
"""

import re

_MARK = re.compile(r'§(\w+)')


def one_line(e):
  """An exception's message on one line (whitespace collapsed), or its type's name."""
  return ' '.join(str(e).split()) or type(e).__name__


class SettingError(ValueError):
  """A bad setting, file or combination of settings; its message marks setting names `§name`."""

  def __init__(self, message):
    super().__init__(message)
    self.template = message

  def __str__(self):
    return _MARK.sub(r'\1', self.template)

  def with_flags(self):
    """The message with each setting spelled as its command-line flag (`--name`)."""
    return _MARK.sub(r'--\1', self.template)


def plain(text):
  """A message with its setting marks (`§name`) shown as plain names."""
  return _MARK.sub(r'\1', text)


def flagged(text):
  """A message with its setting marks shown as command-line flags (`--name`)."""
  return _MARK.sub(r'--\1', text)


def marked(e):
  """An exception's message on one line with its setting marks kept (for `flagged`/`plain`)."""
  text = e.template if isinstance(e, SettingError) else str(e)
  return ' '.join(text.split()) or type(e).__name__


def for_flags(e):
  """One line for the command line: a `SettingError`'s names as flags, any other error as it is."""
  text = e.with_flags() if isinstance(e, SettingError) else str(e)
  return ' '.join(text.split()) or type(e).__name__


class RunError(SettingError):
  """A run that cannot start or go on (resume refused, bad distributed settings); one line."""
