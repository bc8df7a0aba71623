// The typed way the UI calls the host. A call names its method and the route's template as the
// host documents it (`api.get('/api/agents/{slug}', { path: { slug } })`); both are keys of the
// generated `paths` (schema.d.ts, from docs/openapi.json), so a call to a route the host does not
// have, a missing path parameter, a wrong query or body, or a wrong idea of the answer is a type
// error instead of a surprise at run time. Path parameters are URL-encoded here, once, for every
// call. Underneath, HostClient stays the one transport (the browser's fetch or the app's shell)
// and failures stay HostError.
import { HostError, type HostClient, type Method, type Query } from '../host/HostClient';
import type { paths } from './schema';

type Verb = 'get' | 'post' | 'put' | 'patch' | 'delete';

/** The route templates that answer `M`. */
export type PathsFor<M extends Verb> = {
  [P in keyof paths]: paths[P] extends { [K in M]: object } ? P : never;
}[keyof paths];

/** The operation behind `M P`. */
type Op<M extends Verb, P extends PathsFor<M>> = NonNullable<paths[P][M]>;

type Params<O> = O extends { parameters: infer X } ? X : never;
type Json<B> = B extends { content: { 'application/json': infer T } } ? T : never;

// openapi-typescript writes an absent part as `part?: never`, an optional one as `part?: T` and a
// required one as `part: T`; each maps to the same shape in the call's options.
type PathPart<O> = Params<O> extends { path: infer T } ? { path: T } : { path?: never };
type QueryPart<O> =
  Params<O> extends { query: infer T }
    ? { query: T }
    : Params<O> extends { query?: infer T }
      ? [NonNullable<T>] extends [never]
        ? { query?: never }
        : { query?: NonNullable<T> }
      : { query?: never };
type BodyPart<O> = O extends { requestBody: infer B }
  ? { body: Json<B> }
  : O extends { requestBody?: infer B }
    ? [Json<NonNullable<B>>] extends [never]
      ? { body?: never }
      : { body?: Json<NonNullable<B>> }
    : { body?: never };

/** What a call to `O` takes besides its path: its path parameters, query and body. */
export type Options<O> = PathPart<O> & QueryPart<O> & BodyPart<O>;

/** The options argument, optional when the route needs nothing. */
type Args<O> = {} extends Options<O> ? [options?: Options<O>] : [options: Options<O>];

type Success = 200 | 201 | 202 | 204;
type Content<R> = R extends { content: { 'application/json': infer T } }
  ? T
  : R extends { content: { 'text/plain': infer T } }
    ? T
    : undefined;
/** What a successful call to `O` resolves with (undefined for 204). */
export type Answer<O> = O extends { responses: infer R } ? { [C in keyof R & Success]: Content<R[C]> }[keyof R & Success] : never;

type TextPaths = {
  [P in PathsFor<'get'>]: Op<'get', P> extends { responses: { 200: { content: { 'text/plain': unknown } } } } ? P : never;
}[PathsFor<'get'>];

// The routes that answer plain text instead of JSON (the browser must read them as text). A
// Record over every such route in the schema: a new one is a type error here until it is listed.
const TEXT: Record<TextPaths, true> = {
  '/api/agents/{slug}/logs': true,
  '/metrics': true,
};

/**
 * `template` with each `{name}` replaced by its URL-encoded parameter. An empty, `.` or `..`
 * parameter would name another route (URL parsers resolve dot segments, also encoded ones), so
 * it is refused before the host is asked, as the bad input it is.
 */
export function fillPath(template: string, params: Record<string, string | number> = {}): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = params[name] === undefined ? '' : String(params[name]);
    if (value === '' || value === '.' || value === '..') {
      throw new HostError(400, 'bad_input', `"${value}" is not a valid ${name} for ${template}`);
    }
    return encodeURIComponent(value);
  });
}

function verb<M extends Verb>(host: HostClient, method: M) {
  return <P extends PathsFor<M>>(path: P, ...[options]: Args<Op<M, P>>): Promise<Answer<Op<M, P>>> => {
    // The types above have checked the options against the route; here they are plain values.
    const { path: params, query, body } = (options ?? {}) as {
      path?: Record<string, string | number>;
      query?: Query;
      body?: unknown;
    };
    let url: string;
    try {
      url = fillPath(path, params);
    } catch (e) {
      return Promise.reject(e);
    }
    const init: Parameters<HostClient['request']>[2] = {};
    if (query !== undefined) init.query = query;
    if (body !== undefined) init.body = body;
    if (Object.hasOwn(TEXT, path)) init.text = true;
    return host.request<Answer<Op<M, P>>>(method.toUpperCase() as Method, url, init);
  };
}

/** The typed calls over `host`: `get`, `post`, `put`, `patch` and `delete`. */
export function createApi(host: HostClient) {
  return {
    get: verb(host, 'get'),
    post: verb(host, 'post'),
    put: verb(host, 'put'),
    patch: verb(host, 'patch'),
    delete: verb(host, 'delete'),
  };
}

export type Api = ReturnType<typeof createApi>;
