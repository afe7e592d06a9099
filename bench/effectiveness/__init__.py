"""Active-learning simulation: how many labels each strategy needs to fill rare-class quotas.

The planner is run through :func:`planner.core.plan.plan_batch`, the daemon's own call.
"""
