r"""Applications built on the library, kept out of the core import path.

``cli`` (the ``captum-ntk`` command), ``demo`` (``captum-ntk demo``), example ``models``
(``DigitsMLP``, ``DigitsCNN``, ``train_classifier``), ``datasets`` (scikit-learn's digits as
tensors), ``text_data`` (a small review set that ships with the package) and ``plots``.
``import captum_ntk`` imports none of them.
"""
