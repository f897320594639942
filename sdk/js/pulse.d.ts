// Types of pulse.js (the browser snippet served at /sdk/pulse.js), for single-page apps:
//   /// <reference path="pulse.d.ts" />   then   window.pulse.decide("home_hero").then(...)

/** A visitor's choices; `pulse.consent()` records them (cookie `pulse_consent`) and sends a consent event. */
export interface ConsentChoices {
  personalisation?: boolean;
  analytics?: boolean;
  /** one choice for every channel, or one per channel */
  marketing?: boolean | { email?: boolean; push?: boolean; sms?: boolean; web?: boolean };
}

export interface PulseOptions {
  /** the PUBLIC API key (never a server or admin key: the API refuses those from pages) */
  key?: string;
  /** the API's origin; default: the origin the script was loaded from */
  api?: string;
  /** opt_in: nothing is sent and no id cookie is set before consent; opt_out (default): until refused */
  consent?: "opt_in" | "opt_out";
  /** cookie domain of the anonymous id (default: the page's host) */
  cookieDomain?: string;
}

export interface DecideOptions {
  n?: number;
  candidates?: string[];
  explain?: boolean;
  /** page context: locale, device... (strings, numbers, booleans) */
  context?: Record<string, string | number | boolean | null>;
}

export interface RankedAction {
  action_id: string;
  score: number;
  title?: string;
  category?: string;
  payload?: Record<string, unknown>;
}

export interface CandidateExplanation {
  action_id: string;
  eligible: boolean;
  excluded_by?: string;
  rank?: number | null;
  score?: number;
  contributions?: { term: string; value: number }[];
  expected_reward?: number;
  uncertainty?: number;
}

/** The answer of POST /v1/decide. */
export interface Decision {
  decision_id: string;
  placement: string;
  actions: RankedAction[];
  policy: string;
  model_version: string;
  holdout_arm: "learning" | "control";
  propensity: number;
  personalised: boolean;
  degraded: boolean;
  segments: string[];
  explanation?: { policy: string; segments: string[]; candidates: CandidateExplanation[] };
}

/** detail of the `pulse:render` event a slot dispatches (bubbles) after each decision */
export interface RenderDetail {
  decision: Decision;
  /** false: the same actions as already shown, left as they were */
  changed: boolean;
}

export type EventType = "page_view" | "click" | "add_to_cart" | "remove_from_cart" | "search" | "impression";

export interface Pulse {
  readonly version: string;
  /** override the script tag's data-key / data-api / data-consent / data-cookie-domain */
  init(options: PulseOptions): Pulse;
  /** a page_view (url and title filled in); false when consent keeps it from being sent */
  page(properties?: Record<string, unknown>): boolean;
  track(type: EventType, properties?: Record<string, unknown>): boolean;
  /** link this browser to a customer: userHash = hex HMAC-SHA256(IDENTITY_SECRET, customerId) from the site's back end */
  identify(customerId: string, userHash?: string): boolean;
  /** forget the customer and the anonymous id (logout) */
  reset(): void;
  /** record the visitor's choices; returns whether events are sent from now on */
  consent(choices: ConsentChoices): boolean;
  consented(): ConsentChoices | null;
  tracking(): boolean;
  anonymousId(): string | null;
  decide(placement: string, options?: DecideOptions): Promise<Decision>;
  /** fill every [data-pulse-placement] under root (default: the document) again; watch new [data-pulse-item] */
  refresh(root?: ParentNode): Promise<(Decision | null)[]>;
  /** send the queued events now (sendBeacon, else fetch keepalive) */
  flush(): void;
}

declare global {
  interface Window {
    pulse: Pulse;
  }
  interface DocumentEventMap {
    "pulse:ready": CustomEvent<{ pulse: Pulse }>;
    "pulse:render": CustomEvent<RenderDetail>;
    "pulse:error": CustomEvent<{ error: Error }>;
  }
}
