"""The package's version: a leaf module (imports nothing), so run records and the prepare steps read it without
importing the package face (`clinpeft.load`)."""

__version__ = "0.1.0"
