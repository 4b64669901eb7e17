"""mycel: a distributed cache built on nodosum."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
