"""Evaluation: IQA metrics, the split protocol, aggregation over splits and plots."""
