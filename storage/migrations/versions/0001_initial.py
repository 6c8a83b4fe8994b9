"""Initial schema: cases, classes, annotations, predictions, corrections, prototypes, runs, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _mask_columns() -> list[sa.Column]:
    return [
        sa.Column("mask_sha256", sa.String(64), nullable=False),
        sa.Column("mask_relpath", sa.String(200), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "structure_classes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("color", sa.String(7), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("source_filename", sa.String(1000), nullable=False),
        sa.Column("modality", sa.String(50), nullable=True),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("spacing", sa.JSON(), nullable=True),
        sa.Column("affine", sa.JSON(), nullable=True),
        sa.Column("orientation", sa.String(10), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_relpath", sa.String(200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_cases_sha256", "cases", ["sha256"])
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("class_id", sa.Integer(), sa.ForeignKey("structure_classes.id"), nullable=False),
        sa.Column("slice_indices", sa.JSON(), nullable=False),
        *_mask_columns(),
        sa.Column("author", sa.String(200), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("class_id", sa.Integer(), sa.ForeignKey("structure_classes.id"), nullable=False),
        sa.Column("strategy", sa.String(50), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        *_mask_columns(),
        sa.Column("params", sa.JSON(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "prediction_id",
            sa.Integer(),
            sa.ForeignKey("predictions.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("class_id", sa.Integer(), sa.ForeignKey("structure_classes.id"), nullable=False),
        sa.Column("strategy", sa.String(50), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        *_mask_columns(),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        _ts("created_at"),
    )
    for table in ("annotations", "predictions", "corrections"):
        op.create_index(f"ix_{table}_case_id", table, ["case_id"])
        op.create_index(f"ix_{table}_class_id", table, ["class_id"])
        op.create_index(f"ix_{table}_mask_sha256", table, ["mask_sha256"])
    op.create_index("ix_predictions_model_version", "predictions", ["model_version"])
    op.create_index("ix_corrections_prediction_id", "corrections", ["prediction_id"])
    op.create_index("ix_corrections_model_version", "corrections", ["model_version"])
    op.create_index("ix_corrections_status", "corrections", ["status"])
    op.create_table(
        "prototypes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "class_id",
            sa.Integer(),
            sa.ForeignKey("structure_classes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("update_count", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.UniqueConstraint("class_id", "model_version", name="uq_prototype_class_model"),
    )
    op.create_table(
        "prototype_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "prototype_id",
            sa.Integer(),
            sa.ForeignKey("prototypes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("update_count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_prototype_history_prototype_id", "prototype_history", ["prototype_id"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("file_relpath", sa.String(200), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("case_ids", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column(
            "model_version_id",
            sa.Integer(),
            sa.ForeignKey("model_versions.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
    )
    op.create_index("ix_training_runs_status", "training_runs", ["status"])


def downgrade() -> None:
    for table in (
        "training_runs",
        "model_versions",
        "prototype_history",
        "prototypes",
        "corrections",
        "predictions",
        "annotations",
        "cases",
        "structure_classes",
    ):
        op.drop_table(table)
