// Prints the suite's tests (id, kind, dependencies, browser flags) as JSON: node list_tests.mjs PACKAGE_DIR
import { pathToFileURL } from 'node:url'

const pkg = pathToFileURL(`${process.argv[2]}/`)
const load = async path => (await import(new URL(path, pkg).href)).default
const suites = await load('tests/index.mjs')
// cli.mjs and the results page both append this suite to the default list
suites.push(await load('tests/surrogate-control.mjs'))
console.log(JSON.stringify(suites.flatMap(suite => suite.tests.map(test => ({
  id: test.id,
  suite: suite.id,
  kind: test.kind ?? 'required',
  depends_on: test.depends_on ?? [],
  browser_only: test.browser_only === true,
  browser_skip: test.browser_skip === true
})))))
