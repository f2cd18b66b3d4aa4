"""The ground floor, importing no other project package: flags, errors, file output, devices and
precision, distributed helpers, checkpoint files, metrics."""
