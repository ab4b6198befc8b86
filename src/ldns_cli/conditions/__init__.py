"""Conditions: the condition spec a model stores, turning raw values into network features and
checking them (`spec`), and the `--condition NAME=VALUES` grammar of `ldns sample` (`grammar`).

Imports core only.
"""
