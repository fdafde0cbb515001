//! The User-Agent of a collect request: the browser, OS and device class
//! given to every event, and whether the agent is a bot.
//!
//! The bot decision is made for browser traffic (requests with a
//! publishable key), where anything that is not a person's browser is
//! noise: crawlers, headless and automated browsers, monitors, link
//! previewers, and HTTP client libraries (curl, python-requests, axios,
//! Go-http-client, okhttp, …), which no visitor's browser sends. Servers
//! and SDKs with a secret key do send those, so the handler must not apply
//! the decision to them.
//!
//! An agent is a bot when any of these says so, each matched on word
//! boundaries (see `on_word_boundaries`) so that a marker inside a longer
//! word ("AbbottLabs", "my-robot-service", the phone brand "CUBOT") is not
//! taken for a bot:
//!
//! 1. the Crawlerdex list of about 3,000 named crawlers and automation
//!    tools, maintained upstream and shipped by the `iscrawl` crate;
//! 2. woothee's own named crawlers (not its "misc crawler" guess, which
//!    matches `bot` inside words);
//! 3. a few generic words: `bot`, `bots`, `crawl`, `crawler`, `spider`,
//!    `scraper`, so that `SeekportBot` or `compatible; bot` is caught even
//!    before the list names it.

use std::borrow::Cow;

use super::text::{find_forbidden, truncate_chars, TextKind};
use super::AgentFields;

/// The user agent, classified. Bots are dropped (and counted) by the
/// handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agent {
    /// A crawler, an automated browser or an HTTP client library: not a
    /// person's browser (see [`is_bot`]).
    pub is_bot: bool,
    /// Browser, version, OS and device class, as far as they are known.
    pub fields: AgentFields,
}

/// Classifies the User-Agent: [`is_bot`] for the bot decision, and woothee
/// for the browser, its version, the OS and the device class. A missing or
/// blank agent is not a bot and has no fields (servers often send none).
///
/// `device_type` is `desktop`, `mobile` or `tablet`, or else woothee's
/// category (`crawler`, `appliance`, `misc`); woothee can't tell tablets,
/// so iPads and Android agents without `Mobile` are taken as tablets.
pub fn classify_agent(user_agent: Option<&str>) -> Agent {
    classify(user_agent, true)
}

/// The browser, OS and device of a user agent without the bot decision: for
/// traffic that is never dropped as a bot (servers' and apps' events, sent
/// with the secret key) and so never pays for loading the list. An agent
/// woothee takes for a crawler has no fields.
pub fn describe_agent(user_agent: Option<&str>) -> AgentFields {
    classify(user_agent, false).fields
}

fn classify(user_agent: Option<&str>, detect_bots: bool) -> Agent {
    let Some(ua) = user_agent.map(str::trim).filter(|ua| !ua.is_empty()) else {
        return Agent::default();
    };
    let parsed = woothee::parser::Parser::new().parse(ua);
    let is_bot = detect_bots && (parsed.as_ref().is_some_and(is_named_crawler) || is_bot(ua));
    let Some(result) = parsed else {
        return Agent {
            is_bot,
            fields: AgentFields::default(),
        };
    };
    // woothee's guess that this is a crawler was overruled: its labels
    // ("misc crawler", device "crawler") would be wrong too.
    if result.category == "crawler" && !is_bot {
        return Agent::default();
    }
    let known = |s: &str| -> Option<String> {
        let s = s.trim();
        (!s.is_empty()
            && s != woothee::woothee::VALUE_UNKNOWN
            && find_forbidden(s, TextKind::Plain).is_none())
        .then(|| truncate_chars(s, 50).to_owned())
    };
    let device_type = match result.category {
        "pc" => Some("desktop".to_owned()),
        "smartphone"
            if result.os == "iPad" || (result.os == "Android" && !ua.contains("Mobile")) =>
        {
            Some("tablet".to_owned())
        }
        "smartphone" | "mobilephone" => Some("mobile".to_owned()),
        other => known(other),
    };
    Agent {
        is_bot,
        fields: AgentFields {
            browser: known(result.name),
            browser_version: known(result.version),
            os: known(result.os),
            device_type,
        },
    }
}

/// Whether `user_agent` is a bot by the Crawlerdex list or a generic bot
/// word, each on word boundaries (module docs). For a request that
/// classifies its agent anyway, [`classify_agent`] also asks woothee.
///
/// The list is loaded on first use: about 100 ms and 20 MB once per
/// process; each call after that takes about a microsecond.
pub fn is_bot(user_agent: &str) -> bool {
    has_generic_word(user_agent) || is_listed(user_agent)
}

/// woothee's crawlers, less its "misc crawler" guess (`bot`, `crawler` or
/// `spider` before a separator, anywhere: "my-robot-service").
fn is_named_crawler(result: &woothee::parser::WootheeResult) -> bool {
    result.category == "crawler" && result.name != "misc crawler"
}

/// Words that mark a bot wherever they stand as a word of their own.
const GENERIC_WORDS: [&str; 6] = ["bot", "bots", "crawl", "crawler", "spider", "scraper"];

fn has_generic_word(ua: &str) -> bool {
    let lower = ua.to_ascii_lowercase();
    GENERIC_WORDS.iter().any(|word| {
        lower
            .match_indices(word)
            .any(|(at, _)| on_word_boundaries(ua.as_bytes(), at, at + word.len()))
    })
}

/// How many list entries are tried before an agent is taken as no bot: an
/// entry matched only inside a word ("obot" in "robot") is set aside and
/// the list asked again, a handful of times at most.
const MAX_LIST_LOOKUPS: usize = 4;

/// Whether a Crawlerdex entry matches `ua` on word boundaries.
///
/// `iscrawl` answers with the first entry that matches anywhere. When that
/// match sits inside a word, its text is masked with letters no entry
/// matches (so no new word boundary appears) and the list is asked again.
fn is_listed(ua: &str) -> bool {
    let mut text = Cow::Borrowed(ua);
    for _ in 0..MAX_LIST_LOOKUPS {
        let Some(info) = iscrawl::crawler_info(&text) else {
            return false;
        };
        // iscrawl compiles every entry it can, so this only fails if the
        // two disagree about a pattern; then the entry can't be checked.
        let Ok(pattern) = regex::Regex::new(&info.pattern) else {
            return false;
        };
        let mut inside_words = Vec::new();
        for found in pattern.find_iter(&text) {
            if on_word_boundaries(text.as_bytes(), found.start(), found.end()) {
                return true;
            }
            inside_words.push(found.range());
        }
        if inside_words.is_empty() {
            return false;
        }
        let mut masked = text.into_owned().into_bytes();
        for range in inside_words {
            masked[range].fill(b'q');
        }
        // Only ASCII bytes were replaced, and only whole matches, which
        // begin and end on character boundaries.
        text = Cow::Owned(String::from_utf8(masked).unwrap_or_default());
    }
    false
}

/// Whether `text[start..end]` is made of whole words: at each end, the
/// match or its neighbour is not a letter, or the neighbours are a
/// lowercase letter followed by an uppercase one (`SeekportBot`). So `bot`
/// is a word in "compatible; bot", "adbeat_bot" and "SeekportBot", but not
/// in "AbbottLabs", "my-robot-service" or "CUBOT_X20". Digits count as a
/// boundary: an entry like `Java\/[0-9]` ends inside a version number.
pub(crate) fn on_word_boundaries(text: &[u8], start: usize, end: usize) -> bool {
    let boundary = |at: usize| {
        if at == 0 || at >= text.len() {
            return true;
        }
        let (before, after) = (text[at - 1], text[at]);
        !before.is_ascii_alphabetic()
            || !after.is_ascii_alphabetic()
            || (before.is_ascii_lowercase() && after.is_ascii_uppercase())
    };
    start < end && boundary(start) && boundary(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

    #[test]
    fn search_engines_crawlers_and_headless_browsers_are_bots() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot-Image/1.0",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
            "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
            "CCBot/2.0 (https://commoncrawl.org/faq/)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Twitterbot/1.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
            "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
            // Not on any list, but named a bot.
            "Mozilla/5.0 (compatible; SomeNewBot/0.1)",
            "Mozilla/5.0 (compatible; bot)",
            "acme_bot/2.0",
        ] {
            assert!(classify_agent(Some(ua)).is_bot, "{ua}");
            assert!(is_bot(ua), "{ua}");
        }
    }

    /// For browser traffic, which is what the decision is for, an HTTP
    /// client library is automation, not a visitor.
    #[test]
    fn http_client_libraries_are_bots() {
        for ua in [
            "curl/8.5.0",
            "Wget/1.21.4",
            "python-requests/2.31.0",
            "Python-urllib/3.12",
            "Go-http-client/1.1",
            "Go-http-client/2.0",
            "axios/1.6.8",
            "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
            "okhttp/4.12.0",
            "reqwest/0.12.4",
            "Java/17.0.2",
            "PostmanRuntime/7.37.0",
        ] {
            assert!(classify_agent(Some(ua)).is_bot, "{ua}");
        }
    }

    #[test]
    fn words_that_only_contain_bot_are_not_bots() {
        for ua in [
            "AbbottLabs/3.2 (iPhone; iOS 17.4)",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 AbbottLabs/3.2",
            "my-robot-service/1.0",
            "my-robot-service",
            "Mozilla/5.0 (compatible; my-robot-service/2.1)",
            // CUBOT is a phone brand.
            "Mozilla/5.0 (Linux; Android 9; CUBOT_X20) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 10; NOTE 7 Build/QP1A.190711.020; CUBOT) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/110.0.0.0 Mobile Safari/537.36",
        ] {
            let agent = classify_agent(Some(ua));
            assert!(!agent.is_bot, "{ua}");
            assert_ne!(agent.fields.device_type.as_deref(), Some("crawler"), "{ua}");
        }
    }

    #[test]
    fn real_browsers_are_not_bots() {
        for ua in [
            CHROME_DESKTOP,
            IPHONE_SAFARI,
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0",
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
            "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/460.0.0.37.104;]",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.30.92",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edge/44.18363.8131",
        ] {
            assert!(!classify_agent(Some(ua)).is_bot, "{ua}");
        }
    }

    #[test]
    fn a_word_is_told_by_its_neighbours_and_camel_case() {
        let word = |text: &str, part: &str| {
            let at = text.find(part).unwrap();
            on_word_boundaries(text.as_bytes(), at, at + part.len())
        };
        assert!(word("compatible; bot)", "bot"));
        assert!(word("adbeat_bot", "bot"));
        assert!(word("SeekportBot;", "Bot"));
        assert!(word("Googlebot/2.1", "Googlebot/"));
        assert!(word("Java/17.0.2", "Java/1"));
        assert!(!word("AbbottLabs", "bot"));
        assert!(!word("my-robot-service", "obot"));
        assert!(!word("CUBOT_X20", "BOT"));
        assert!(!word("x", ""));
    }

    #[test]
    fn chrome_on_desktop_is_a_desktop_browser() {
        let agent = classify_agent(Some(CHROME_DESKTOP));
        assert_eq!(agent.fields.browser.as_deref(), Some("Chrome"));
        assert_eq!(agent.fields.browser_version.as_deref(), Some("124.0.0.0"));
        assert_eq!(agent.fields.os.as_deref(), Some("Windows 10"));
        assert_eq!(agent.fields.device_type.as_deref(), Some("desktop"));
    }

    #[test]
    fn safari_on_an_iphone_is_a_mobile_browser() {
        let agent = classify_agent(Some(IPHONE_SAFARI));
        assert_eq!(agent.fields.browser.as_deref(), Some("Safari"));
        assert_eq!(agent.fields.os.as_deref(), Some("iPhone"));
        assert_eq!(agent.fields.device_type.as_deref(), Some("mobile"));
    }

    #[test]
    fn ipads_and_android_agents_without_mobile_are_tablets() {
        let ipad = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
        let android_tablet = "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let android_phone = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
        let device = |ua| classify_agent(Some(ua)).fields.device_type;
        assert_eq!(device(ipad).as_deref(), Some("tablet"));
        assert_eq!(device(android_tablet).as_deref(), Some("tablet"));
        assert_eq!(device(android_phone).as_deref(), Some("mobile"));
    }

    #[test]
    fn a_missing_or_unknown_user_agent_is_no_bot_and_has_no_fields() {
        assert_eq!(classify_agent(None), Agent::default());
        assert_eq!(classify_agent(Some("  ")), Agent::default());
        let agent = classify_agent(Some("something-unheard-of"));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields, AgentFields::default());
    }
}
