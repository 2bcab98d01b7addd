"""Data cards (datasheets) of the datasets, shipped as package data: ``an8flower.data_cards``."""
