"""Training objectives that wrap any student: HetComp, w/o KD and the baselines, behind one contract."""
