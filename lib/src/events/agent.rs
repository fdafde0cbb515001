//! The User-Agent of a collect request: the browser, OS and device class
//! given to every event, and whether the agent is a bot.

use super::text::{find_forbidden, truncate_chars, TextKind};
use super::AgentFields;

/// The user agent, classified. Bots are dropped (and counted) by the
/// handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agent {
    /// A crawler or an automated browser, whose events are not counted.
    pub is_bot: bool,
    /// Browser, version, OS and device class, as far as they are known.
    pub fields: AgentFields,
}

/// Case-insensitive markers of clear bots that woothee does not list as
/// crawlers (it only tries its vague "maybe crawler" patterns on agents it
/// can't otherwise place, and headless browsers look like browsers).
const BOT_MARKERS: [&str; 7] = [
    "bot",
    "crawl",
    "spider",
    "headlesschrome",
    "lighthouse",
    "facebookexternalhit",
    "slurp",
];

/// Classifies the User-Agent with `woothee`: its crawlers are bots, and so
/// is any agent with one of a few clear markers. HTTP clients (curl,
/// reqwest, node, Python, Go) and a missing agent are *not* bots: servers
/// and SDKs send events with them.
///
/// `device_type` is `desktop`, `mobile` or `tablet`, or else woothee's
/// category (`crawler`, `appliance`, `misc`); woothee can't tell tablets,
/// so iPads and Android agents without `Mobile` are taken as tablets.
pub fn classify_agent(user_agent: Option<&str>) -> Agent {
    let Some(ua) = user_agent.map(str::trim).filter(|ua| !ua.is_empty()) else {
        return Agent::default();
    };
    let parsed = woothee::parser::Parser::new().parse(ua);
    let woothee_bot = parsed.as_ref().is_some_and(|r| r.category == "crawler");
    let Some(result) = parsed else {
        return Agent {
            is_bot: has_bot_marker(ua),
            fields: AgentFields::default(),
        };
    };
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
        is_bot: woothee_bot || has_bot_marker(ua),
        fields: AgentFields {
            browser: known(result.name),
            browser_version: known(result.version),
            os: known(result.os),
            device_type,
        },
    }
}

fn has_bot_marker(ua: &str) -> bool {
    let ua = ua.to_ascii_lowercase();
    BOT_MARKERS.iter().any(|marker| {
        ua.match_indices(marker).any(|(at, _)| {
            // CUBOT is a phone brand, not a bot.
            !(*marker == "bot" && ua[..at].ends_with("cu"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- user agents -----------------------------------------------------

    const CHROME_DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

    #[test]
    fn googlebot_and_other_crawlers_are_bots() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "CCBot/2.0 (https://commoncrawl.org/faq/)",
        ] {
            assert!(classify_agent(Some(ua)).is_bot, "{ua}");
        }
    }

    #[test]
    fn chrome_on_desktop_is_a_desktop_browser_and_not_a_bot() {
        let agent = classify_agent(Some(CHROME_DESKTOP));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields.browser.as_deref(), Some("Chrome"));
        assert_eq!(agent.fields.browser_version.as_deref(), Some("124.0.0.0"));
        assert_eq!(agent.fields.os.as_deref(), Some("Windows 10"));
        assert_eq!(agent.fields.device_type.as_deref(), Some("desktop"));
    }

    #[test]
    fn safari_on_an_iphone_is_a_mobile_browser_and_not_a_bot() {
        let agent = classify_agent(Some(IPHONE_SAFARI));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields.browser.as_deref(), Some("Safari"));
        assert_eq!(agent.fields.os.as_deref(), Some("iPhone"));
        assert_eq!(agent.fields.device_type.as_deref(), Some("mobile"));
    }

    #[test]
    fn ipads_and_android_agents_without_mobile_are_tablets() {
        let ipad = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
        let android_tablet = "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let android_phone = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
        assert_eq!(
            classify_agent(Some(ipad)).fields.device_type.as_deref(),
            Some("tablet")
        );
        assert_eq!(
            classify_agent(Some(android_tablet))
                .fields
                .device_type
                .as_deref(),
            Some("tablet")
        );
        assert_eq!(
            classify_agent(Some(android_phone))
                .fields
                .device_type
                .as_deref(),
            Some("mobile")
        );
    }

    #[test]
    fn http_clients_and_a_missing_user_agent_are_not_bots() {
        for ua in [
            "curl/8.5.0",
            "Wget/1.21.4",
            "reqwest/0.12.4",
            "python-requests/2.31.0",
            "Python-urllib/3.12",
            "Go-http-client/1.1",
            "Go-http-client/2.0",
            "node",
            "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
            "undici",
            "axios/1.6.8",
            "okhttp/4.12.0",
            "Java/17.0.2",
            "Ruby",
            "PostmanRuntime/7.37.0",
            // A phone brand that contains "bot".
            "Mozilla/5.0 (Linux; Android 9; CUBOT_X20) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        ] {
            assert!(!classify_agent(Some(ua)).is_bot, "{ua}");
        }
        assert_eq!(classify_agent(None), Agent::default());
        assert_eq!(classify_agent(Some("  ")), Agent::default());
    }

    #[test]
    fn an_unknown_user_agent_has_no_fields() {
        let agent = classify_agent(Some("something-unheard-of"));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields.browser, None);
        assert_eq!(agent.fields.os, None);
    }
}
