"""Filters: each appends one verdict (keep, score, reason) per record to the ledger; nothing is deleted.

The curated set is the view of records without a rejecting verdict (see ``Store.curated_table``).
Recipes already write their own parse verdicts (filter ``<recipe>.parse``).
"""
