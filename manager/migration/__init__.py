"""The VMMigration engine: a pure planner and the thin reconciler shell around it.

How one reconcile pass works (``controller.VMMigrationReconciler``):

1. read the VMMigration; ``planner.needs`` says which quick RPCs this phase needs;
2. ``gather`` collects ``model.Observations``: store objects (source and target
   VirtualMachine, Providers, Secret presence, other migrations of the same source) and
   quick RPCs (DescribeVM, GetCapabilities, Validate, GetTask for every task ref);
3. ``planner.probes`` names the short idempotent submissions whose task the planner must
   see (power-off, snapshot, cleanup deletes): the shell submits them (the same operation
   id returns the same task, so re-submitting *is* polling) and adds the tasks to the
   observations;
4. ``planner.plan`` -- pure, no I/O -- returns a ``model.Plan``: the new status, the
   actions (long-task submissions, store writes, cancels, finalizer changes), the events
   and the requeue delay;
5. ``execute`` runs the actions; ``planner.record_submission`` writes each returned task
   id into the new status; the status is written once (``update_status``; a Conflict is
   raised for the runtime to retry the pass, never copied over), then events are emitted.

Modules: ``model`` (types), ``planner`` (phase dispatch, needs, probes), ``validation``
(rules 1-6), ``snapshot`` (cold shutdown, snapshot), ``disks`` (export/import per disk),
``formats`` (where conversion happens), ``transfer`` (the data phases' conditions and
events), ``progress`` (bytes, percent, ETA), ``retry`` (error classes, backoff),
``target`` (NIC mapping, the VirtualMachine manifest, target comparison), ``finish``
(Creating, ValidatingTarget, Ready), ``cleanup`` (cleanup policy, finalizer), ``naming``
(operation ids, keys, URLs, names), ``context`` (one planning pass); the shell:
``gather`` and ``execute`` (its I/O) and ``controller`` (the reconciler, watch mapping).
"""
