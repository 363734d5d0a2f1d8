// @possam/review, browser side: the `refresh_open_sample` operator.
//
// Why: the App fetches the open sample once (its `mainSampleQuery`, cached in the App's Relay
// store by sample id and view) and keeps showing that copy. A correction written by a Python
// operator, followed by the built-in `reload_samples`, refreshes the grid but not the open
// sample (FiftyOne 1.22). This operator re-executes the App's own query for the open sample
// against the server; Relay writes the answer into its store and the sample view redraws with
// the new labels, without a page reload or closing the sample. Python operators trigger it
// after every correction (operator_support.after_correction).
//
// Plain browser JavaScript on the modules FiftyOne puts on `window` for plugins (no build step).
(function () {
  const foo = window.__foo__;
  const fos = window.__fos__;
  if (!foo || !fos) {
    console.error("@possam/review: the App did not expose its operator and state modules; the open sample will not refresh after corrections");
    return;
  }
  const SAMPLE_QUERY = "mainSampleQuery";

  // The retained operations of the App's sample query for one sample (there is one per view the
  // sample was opened in). `_roots` is the Relay store's table of retained operations: Relay has no
  // public way to list them, and the query document itself is not exported to plugins.
  function openSampleOperations(environment, sampleId) {
    const roots = environment.getStore()._roots;
    if (!roots || typeof roots.values !== "function") {
      throw new Error("the App's Relay store has no table of retained queries (FiftyOne changed)");
    }
    const operations = [];
    for (const root of roots.values()) {
      const operation = root && root.operation;
      const request = operation && operation.request;
      if (!request || !request.node || request.node.params.name !== SAMPLE_QUERY) continue;
      const filter = request.variables && request.variables.filter;
      if (filter && filter.id === sampleId) operations.push(operation);
    }
    return operations;
  }

  class RefreshOpenSample extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "refresh_open_sample",
        label: "PosSAM: refresh the open sample",
        unlisted: true,
      });
    }

    async execute(ctx) {
      const sampleId = await ctx.state.snapshot.getPromise(fos.nullableModalSampleId);
      if (!sampleId) return { refreshed: 0 }; // no sample open: the grid reload is enough
      const environment = fos.getCurrentEnvironment();
      const operations = openSampleOperations(environment, sampleId);
      await Promise.all(operations.map((operation) => environment.execute({ operation }).toPromise()));
      return { refreshed: operations.length };
    }
  }

  foo.registerOperator(RefreshOpenSample, "@possam/review");
})();
