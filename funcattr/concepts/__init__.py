"""Concepts: conditional relevance (CRP), concept ranking and attribution graphs."""

from funcattr.concepts.conditional import ConditionalAttribution, conditional_attribution
from funcattr.concepts.conditions import OUTPUT, Condition

__all__ = ["OUTPUT", "Condition", "ConditionalAttribution", "conditional_attribution"]
