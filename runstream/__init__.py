"""The ``runstream`` command line: the top layer, which assembles processes from the consumer roles
(``consumers/``) and what they are built on (``service/``). Nothing below imports it."""
