"""Policies belong to tenants; versions get a status (draft, active, shadow, retired); shadow runs.

Until now one set of policies served every tenant. Each existing tenant gets its own copy of
every policy with all its versions, so nothing a tenant could submit under before stops working:

- the oldest tenant takes over the existing rows, so its submissions keep their exact version
  rows;
- every other tenant gets a new policy row and a copy of each version (same number, document
  and content hash), and its submissions, verdicts and review tasks are re-pointed to the copy
  of the very version they were pinned to. The version each submission was judged by is unchanged in
  everything but the row id.

A version's status is read from the old data: the policy's active version is `active`, a
version some submission was judged by was active once and is `retired`, any other is `draft`.
With no tenant at all, the policies are dropped: no submission can refer to them, and each new
tenant gets the shipped templates.

The immutability trigger now guards a version's content only: its status moves.

Downgrade folds the copies back into one policy per slug where they are still identical; a
tenant's policy that has diverged stays, renamed `<slug>-<tenant id prefix>`, so no submission
loses its version. Shadow verdicts that no other verdict reuses are dropped with the shadow
tables, since the older schema cannot tell them from live ones.

Revision ID: 0003_policies
Revises: 0003_webhooks
Create Date: 2026-11-25 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_policies"
down_revision: str | None = "0003_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUS = sa.Enum(
    "draft",
    "active",
    "shadow",
    "retired",
    name="policyversionstatus",
    native_enum=False,
    length=32,
)
_ACTION = sa.Enum(
    "allow", "restrict", "block", "review", name="action", native_enum=False, length=32
)


def upgrade() -> None:
    op.add_column("policies", sa.Column("tenant_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_policies_tenant_id_tenants"),
        "policies",
        "tenants",
        ["tenant_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.add_column(
        "policy_versions",
        sa.Column("status", _STATUS, server_default="draft", nullable=False),
    )
    op.add_column(
        "policy_versions",
        sa.Column(
            "status_changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column(
        "policy_versions", sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "verdicts",
        sa.Column(
            "role",
            sa.Enum("live", "shadow", name="verdictrole", native_enum=False, length=16),
            server_default="live",
            nullable=False,
        ),
    )

    op.drop_constraint("uq_policies_slug", "policies", type_="unique")
    op.create_unique_constraint(
        op.f("uq_policies_tenant_id_slug"), "policies", ["tenant_id", "slug"]
    )

    _guard_version_content_only()
    _statuses_from_the_old_pointers()
    _give_every_tenant_its_policies()

    op.alter_column("policies", "tenant_id", nullable=False)
    op.drop_column("policies", "active_version")
    op.drop_column("policies", "activated_at")
    op.create_index(
        "uq_policy_versions_one_active",
        "policy_versions",
        ["policy_id"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "uq_policy_versions_one_shadow",
        "policy_versions",
        ["policy_id"],
        unique=True,
        postgresql_where=sa.text("status = 'shadow'"),
    )
    _create_shadow_tables()


def _guard_version_content_only() -> None:
    op.execute("DROP TRIGGER IF EXISTS policy_versions_append_only ON policy_versions")
    op.execute(
        """
        CREATE FUNCTION refuse_policy_version_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id IS DISTINCT FROM OLD.id
               OR NEW.policy_id IS DISTINCT FROM OLD.policy_id
               OR NEW.version IS DISTINCT FROM OLD.version
               OR NEW.document IS DISTINCT FROM OLD.document
               OR NEW.content_sha256 IS DISTINCT FROM OLD.content_sha256
               OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
                RAISE EXCEPTION 'a policy version''s content is immutable; write a new version'
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER policy_versions_content_immutable BEFORE UPDATE ON policy_versions "
        "FOR EACH ROW EXECUTE FUNCTION refuse_policy_version_rewrite()"
    )


def _statuses_from_the_old_pointers() -> None:
    op.execute(
        """
        UPDATE policy_versions AS v
        SET activated_at = (SELECT min(s.created_at) FROM submissions s
                            WHERE s.policy_version_id = v.id),
            status_changed_at = COALESCE((SELECT max(s.created_at) FROM submissions s
                                          WHERE s.policy_version_id = v.id), v.created_at)
        """
    )
    op.execute(
        """
        UPDATE policy_versions
        SET status = CASE WHEN activated_at IS NULL THEN 'draft' ELSE 'retired' END
        """
    )
    op.execute(
        """
        UPDATE policy_versions AS v
        SET status = 'active',
            activated_at = COALESCE(LEAST(p.activated_at, v.activated_at), v.created_at),
            status_changed_at = COALESCE(p.activated_at, v.created_at)
        FROM policies AS p
        WHERE p.id = v.policy_id AND p.active_version = v.version
        """
    )


def _give_every_tenant_its_policies() -> None:
    connection = op.get_bind()
    first = connection.execute(
        sa.text("SELECT id FROM tenants ORDER BY created_at, id LIMIT 1")
    ).scalar_one_or_none()
    if first is None:
        op.execute("DELETE FROM policy_versions")
        op.execute("DELETE FROM policies")
        return
    connection.execute(sa.text("UPDATE policies SET tenant_id = :first"), {"first": first})
    connection.execute(
        sa.text(
            """
            CREATE TEMPORARY TABLE policy_copies AS
            SELECT gen_random_uuid() AS new_id, p.id AS old_id, t.id AS tenant_id
            FROM policies p CROSS JOIN tenants t
            WHERE t.id <> :first
            """
        ),
        {"first": first},
    )
    op.execute(
        """
        INSERT INTO policies (id, tenant_id, slug, title, created_at)
        SELECT c.new_id, c.tenant_id, p.slug, p.title, p.created_at
        FROM policy_copies c JOIN policies p ON p.id = c.old_id
        """
    )
    op.execute(
        """
        CREATE TEMPORARY TABLE version_copies AS
        SELECT gen_random_uuid() AS new_id, v.id AS old_id, c.tenant_id, c.new_id AS policy_id
        FROM policy_versions v JOIN policy_copies c ON c.old_id = v.policy_id
        """
    )
    # A copy keeps its original's status: the old versions were live for every tenant alike.
    op.execute(
        """
        INSERT INTO policy_versions (id, policy_id, version, document, content_sha256, status,
                                     status_changed_at, activated_at, created_at)
        SELECT vc.new_id, vc.policy_id, v.version, v.document, v.content_sha256, v.status,
               v.status_changed_at, v.activated_at, v.created_at
        FROM version_copies vc JOIN policy_versions v ON v.id = vc.old_id
        """
    )
    op.execute(
        """
        UPDATE submissions AS s SET policy_version_id = vc.new_id
        FROM version_copies vc
        WHERE vc.old_id = s.policy_version_id AND vc.tenant_id = s.tenant_id
        """
    )
    op.execute(
        """
        UPDATE verdicts AS vd SET policy_version_id = vc.new_id
        FROM version_copies vc, submissions s
        WHERE s.id = vd.submission_id AND vc.old_id = vd.policy_version_id
          AND vc.tenant_id = s.tenant_id
        """
    )
    op.execute(
        """
        UPDATE review_tasks AS rt SET policy_version_id = vc.new_id
        FROM version_copies vc
        WHERE vc.old_id = rt.policy_version_id AND vc.tenant_id = rt.tenant_id
        """
    )
    op.execute("DROP TABLE version_copies")
    op.execute("DROP TABLE policy_copies")


def _create_shadow_tables() -> None:
    op.create_table(
        "shadow_outcomes",
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("policy_version_id", sa.Uuid(), nullable=False),
        sa.Column("action", _ACTION, nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("categories", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("model_calls", sa.Integer(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["policy_version_id"],
            ["policy_versions.id"],
            name=op.f("fk_shadow_outcomes_policy_version_id_policy_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_shadow_outcomes_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_outcomes")),
        sa.UniqueConstraint(
            "submission_id",
            "policy_version_id",
            name=op.f("uq_shadow_outcomes_submission_id_policy_version_id"),
        ),
    )
    op.create_index(
        op.f("ix_shadow_outcomes_policy_version_id"),
        "shadow_outcomes",
        ["policy_version_id"],
        unique=False,
    )
    op.create_table(
        "shadow_usage",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_shadow_usage_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", name=op.f("pk_shadow_usage")),
    )


def downgrade() -> None:
    op.drop_table("shadow_usage")
    op.drop_index(op.f("ix_shadow_outcomes_policy_version_id"), table_name="shadow_outcomes")
    op.drop_table("shadow_outcomes")
    op.execute(
        """
        DELETE FROM verdicts AS shadow
        WHERE shadow.role = 'shadow'
          AND NOT EXISTS (SELECT 1 FROM verdicts reuse WHERE reuse.reused_from_id = shadow.id)
        """
    )
    op.drop_column("verdicts", "role")

    op.add_column("policies", sa.Column("active_version", sa.Integer(), nullable=True))
    op.add_column("policies", sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        """
        UPDATE policies AS p SET active_version = v.version, activated_at = v.status_changed_at
        FROM policy_versions v WHERE v.policy_id = p.id AND v.status = 'active'
        """
    )
    _fold_tenant_copies()

    op.drop_index(
        "uq_policy_versions_one_shadow",
        table_name="policy_versions",
        postgresql_where=sa.text("status = 'shadow'"),
    )
    op.drop_index(
        "uq_policy_versions_one_active",
        table_name="policy_versions",
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_constraint(op.f("uq_policies_tenant_id_slug"), "policies", type_="unique")
    op.create_unique_constraint("uq_policies_slug", "policies", ["slug"])
    op.drop_constraint(op.f("fk_policies_tenant_id_tenants"), "policies", type_="foreignkey")
    op.drop_column("policies", "tenant_id")

    op.execute("DROP TRIGGER IF EXISTS policy_versions_content_immutable ON policy_versions")
    op.execute("DROP FUNCTION IF EXISTS refuse_policy_version_rewrite()")
    op.drop_column("policy_versions", "activated_at")
    op.drop_column("policy_versions", "status_changed_at")
    op.drop_column("policy_versions", "status")
    op.execute(
        "CREATE TRIGGER policy_versions_append_only BEFORE UPDATE ON policy_versions "
        "FOR EACH ROW EXECUTE FUNCTION refuse_history_change()"
    )


def _fold_tenant_copies() -> None:
    """One policy per slug again: identical copies merge into the oldest tenant's, others are
    renamed so that every submission still points at the version it was judged by."""
    connection = op.get_bind()
    policies = connection.execute(
        sa.text(
            """
            SELECT p.id, p.slug, p.tenant_id,
                   row_number() OVER (PARTITION BY p.slug
                                      ORDER BY t.created_at, t.id, p.created_at) AS rank
            FROM policies p JOIN tenants t ON t.id = p.tenant_id
            ORDER BY p.slug, rank
            """
        )
    ).all()
    canonical: dict[str, object] = {}
    for policy_id, slug, tenant_id, rank in policies:
        if rank == 1:
            canonical[slug] = policy_id
            continue
        target = canonical[slug]
        pairs = connection.execute(
            sa.text(
                """
                SELECT mine.id, theirs.id
                FROM policy_versions mine
                LEFT JOIN policy_versions theirs
                  ON theirs.policy_id = :target AND theirs.version = mine.version
                 AND theirs.content_sha256 = mine.content_sha256
                WHERE mine.policy_id = :policy
                """
            ),
            {"policy": policy_id, "target": target},
        ).all()
        if any(theirs is None for _, theirs in pairs):
            connection.execute(
                sa.text("UPDATE policies SET slug = :slug WHERE id = :policy"),
                {"slug": f"{slug[:55]}-{str(tenant_id)[:8]}", "policy": policy_id},
            )
            continue
        for mine, theirs in pairs:
            for table in ("submissions", "verdicts", "review_tasks"):
                connection.execute(
                    sa.text(
                        f"UPDATE {table} SET policy_version_id = :theirs "  # noqa: S608
                        "WHERE policy_version_id = :mine"
                    ),
                    {"mine": mine, "theirs": theirs},
                )
        connection.execute(
            sa.text("DELETE FROM policy_versions WHERE policy_id = :policy"), {"policy": policy_id}
        )
        connection.execute(
            sa.text("DELETE FROM policies WHERE id = :policy"), {"policy": policy_id}
        )
