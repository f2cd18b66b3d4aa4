"""The report figures: training curves, PCA/t-SNE of features, predicted masks, architecture diagrams,
and reading the runs they are drawn from. (Not `report/`: that is where make_report.py writes by default.)"""
