"""an8flower: the an8Flower dataset and a benchmark of visual explanations.

Implements the dataset of *Visual Explanation by Interpretation: Improving Visual Feedback
Capabilities of Deep Neural Networks* (Oramas, Wang, Tuytelaars; ICLR 2019, arXiv:1712.06302).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
