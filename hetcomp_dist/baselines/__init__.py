"""The paper's comparison methods (METHOD.md §4) in the same harness as HetComp.

- `losses`: pure torch losses of RD, RRD, MTD, CL-DRD and DCD (per user, vectorised).
- `signal`: the teachers' E4 lists of a user range and their ensemble (rankings, never scores).
- `objectives`: each baseline as an objective wrapping any student (registered in the student
  stage's OBJECTIVES, so `train_student` / `hetcomp-dist distill` pick them by name).
- `select`: λ_KD chosen on validation from student.lambda_grid.
- `table2`: every method for one student as parallel Ray tasks, and the Table 2 report.
"""
