"""Co.R.S.A. (arXiv 2405.11598): two-step COVID-19 CXR screening with FairKL debiasing, fold ensembles, soups."""

from corsa.fairkl import FairKL, fairkl
from corsa.model import CovidHead, HierarchicalResidualHead

__all__ = ["CovidHead", "FairKL", "HierarchicalResidualHead", "fairkl"]
